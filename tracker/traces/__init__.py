"""Session traces: record (:mod:`.recording`), the JSON Lines format (:mod:`.jsonl`),
and exports to the Chrome Trace Event format (:mod:`.chrome`) and OpenTelemetry
OTLP/JSON (:mod:`.otlp`)."""

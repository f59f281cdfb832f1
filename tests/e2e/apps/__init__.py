"""Applications the attaching tests start unchanged (no ``import tracker`` anywhere):
through ``python -m tracker run``, or attached by pid."""

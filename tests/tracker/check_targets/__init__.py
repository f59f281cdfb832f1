"""Small application modules that ``python -m tracker check`` is pointed at in
tests/tracker/test_checks.py."""

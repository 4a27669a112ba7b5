"""The method harness: one tiny canonical setting per public callback, mixin and task, and the generic
tests every setting passes (``tests/test_method_harness.py``). Adding a method is one registry entry."""

from tests.families.conftest import tiny_cache  # noqa: F401  (the tiny task data)

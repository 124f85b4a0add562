"""Low shared pieces every room may use: errors and the one-line CLI policy (``errors``), atomic writes
(``atomic``), the name -> builder registry (``registry``), process groups and reductions (``distributed``),
JSON-lines logs (``jsonl``) and reading ``.pt`` files without running code (``safe_load``).

Imports nothing from the rest of the package."""

"""Exit codes of ``measure``, documented in ``--help`` and the README."""

OK = 0  # measured (the run folder is complete)
MIGRATION_FAILED = 1  # the migration (or a report threshold) failed; the run folder is complete
USAGE = 2  # bad command line, configuration or input files
PREFLIGHT = 3  # a check before the migration failed; nothing was migrated
INTERRUPTED = 130  # Ctrl-C / SIGTERM; the run folder is complete with status "aborted"

EPILOG = (
    "Exit codes: 0 measured; 1 the migration failed (the run folder is still complete); "
    "2 usage, configuration or input error; 3 preflight failed; 130 interrupted "
    "(the run folder is complete, status aborted)."
)

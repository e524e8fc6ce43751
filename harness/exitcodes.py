"""Exit codes of ``measure``, documented in each command's ``--help`` and the README."""

import textwrap

OK = 0  # measured (the run folder is complete)
MIGRATION_FAILED = 1  # the migration (or a report threshold) failed; the run folder is complete
USAGE = 2  # bad command line, configuration or input files
PREFLIGHT = 3  # a check before the migration failed; nothing was migrated
INTERRUPTED = 130  # Ctrl-C / SIGTERM; the run folder is complete with status "aborted"


def epilog(*codes: tuple[int, str]) -> str:
    """A help epilog listing ``codes``, one per line (click keeps a ``\\b`` paragraph as is)."""
    lines = []
    for code, meaning in codes:
        wrapped = textwrap.wrap(meaning, 68)
        lines.append(f"  {code:<4} {wrapped[0]}")
        lines += [f"       {more}" for more in wrapped[1:]]
    return "\b\nExit codes:\n" + "\n".join(lines)


_USAGE_ERROR = (USAGE, "usage, configuration or input error (one line on stderr)")

EPILOG = epilog(
    (OK, "done"),
    (MIGRATION_FAILED, "run: the migration failed; report: a threshold or a regression"),
    _USAGE_ERROR,
    (PREFLIGHT, "run: preflight failed, nothing was migrated"),
    (INTERRUPTED, "interrupted (the run folder is complete, status aborted)"),
) + (
    "\n\nEach command's --help lists its own exit codes. Shell completion (bash, zsh, "
    'fish): eval "$(_MEASURE_COMPLETE=bash_source measure)", see the README.'
)
RUN_EPILOG = epilog(
    (OK, "migrated and measured; the run folder is complete"),
    (MIGRATION_FAILED, "the migration failed or was stopped by --timeout (folder complete)"),
    _USAGE_ERROR,
    (PREFLIGHT, "a check before the migration failed: nothing was migrated"),
    (INTERRUPTED, "interrupted by Ctrl-C or SIGTERM (folder complete, status aborted)"),
)
WATCH_EPILOG = epilog(
    (OK, "measured: --duration passed, or Ctrl-C / SIGTERM ended the watch (status completed)"),
    (MIGRATION_FAILED, "the probes could not start (or the guest agent never called in)"),
    (USAGE, "usage or input error, unwritable output folder, no permission for ICMP"),
    (INTERRUPTED, "interrupted before anything was measured (status aborted)"),
)
ANALYZE_EPILOG = epilog(
    (OK, "analysed; derived/ rebuilt in every run folder"),
    (USAGE, "a path that does not exist, holds no run folder, or a run folder it cannot read"),
)
REPORT_EPILOG = epilog(
    (OK, "every check passed, or there was nothing to check"),
    (MIGRATION_FAILED, "a threshold was exceeded, a regression found, or a run measured nothing"),
    (USAGE, "bad input (nothing is written): a missing folder, an unreadable run, a folder "
     "on both sides, an output that cannot be written"),
)  # fmt: skip
IMPORT_EPILOG = epilog(
    (OK, "imported; the run folder is complete"),
    (USAGE, "a log it cannot read, a bad option, an unwritable output folder"),
)
LAB_EPILOG = epilog(
    (OK, "done"),
    (MIGRATION_FAILED, "status: the lab is not running"),
    (
        USAGE,
        "the lab could not be started or found (the message says why), not root, or "
        "not installed (the [lab] extra)",
    ),
)
QUICKSTART_EPILOG = epilog(
    (OK, "written (files already there are kept)"),
    (USAGE, "the folder cannot be written"),
)

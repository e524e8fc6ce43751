"""PowerShell scripts the harness sends to Hyper-V hosts (package data).

Loaded with ``pkgutil.get_data("harness", "scripts/<name>.ps1")`` and sent
unchanged with ``AddScript``; every value travels as a parameter bound to the
script's ``param()`` block, never as script text.
"""

"""radlens: medical imaging diagnosis service. Not for clinical use.

Everything installs under this one top-level name, so ``pip install radlens`` cannot clash with
another distribution's ``app``, ``models``, ``training``, ``cli`` or ``migrations`` package.
The code lives in the repository's top-level folders of the same names (the layout README.md
describes); the entries here are symbolic links to them: ``radlens.app`` is ``app/``,
``radlens.models`` is ``models/``, and so on.
"""

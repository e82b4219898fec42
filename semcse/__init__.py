"""SemCSE's machinery, one module a concern; the scripts a user runs are at the repository root and
import from here (README.md, "How the code is laid out", maps the modules)."""

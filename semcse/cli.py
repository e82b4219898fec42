"""The command line of every script: `--key=value` overrides of settings.py, the script's own options,
`--help`, and the error policy (a user's mistake is one line and exit code 2; a bug is a traceback)."""
from __future__ import annotations

import errno
import sys
from typing import Any, Callable

import settings
from settings import BOOLS, SettingsError, UserError


def cli(main: Callable[..., Any], flags: dict[str, Any] | None = None, argv: list[str] | None = None) -> None:
    """Run a script's `main(**flags)` after applying the command line, with the project's error policy:
    a UserError (bad settings, data, model folders, run folders) or a file's OSError (missing,
    unreadable, disk full) prints one line `error: ...` to stderr and exits with code 2. Anything else
    is a bug and shows its traceback (exit 1); `--debug` shows it for every error. `--help` / `-h`
    prints the script's options and every setting, and exits 0."""
    argv = sys.argv[1:] if argv is None else argv
    if "--help" in argv or "-h" in argv:
        print(help_text(main, flags))
        try:  # the help is shown whatever settings.py holds; a broken file is then named
            settings.resolved()
        except SettingsError as e:
            print(f"error: {one_line(e)}", file=sys.stderr)
            sys.exit(2)
        sys.exit(0)
    debug = "--debug" in argv
    try:
        main(**parse_command_line([a for a in argv if a != "--debug"], flags))
    except (UserError, OSError) as e:
        if debug or not (isinstance(e, UserError) or _is_file_error(e)):
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; outputs written so far are kept (rerun to continue)", file=sys.stderr)
        sys.exit(130)


def parse_command_line(argv: list[str] | None = None, flags: dict[str, Any] | None = None) -> dict[str, Any]:
    """Apply `--key=value` overrides of settings from argv; return the script's own `flags`.

    `flags` maps a script's own option names to defaults (e.g. {"resume": False}); a bool flag
    may be given bare (`--resume`). Unknown names and bad values raise SettingsError.
    """
    argv = sys.argv[1:] if argv is None else argv
    own = dict(flags or {})
    for arg in argv:
        if not arg.startswith("--"):
            raise SettingsError(f"argument {arg!r} is not of the form --key=value")
        key, has_value, value = arg[2:].partition("=")
        key = key.replace("-", "_")
        if key in own:
            own[key] = _flag(key, own[key], value if has_value else None)
        elif key in settings.Config.__dataclass_fields__:
            if not has_value:
                raise SettingsError(f"setting '--{key}' needs a value: --{key}=VALUE")
            settings.update(**{key: value})
        else:
            names = sorted(own) + ["<any setting in settings.py>"]
            known = ", ".join("--" + n for n in names)
            raise SettingsError(f"unknown option or setting {'--' + key!r} (known: {known}; --help lists them)")
    return own


def help_text(main: Callable[..., Any], flags: dict[str, Any] | None = None) -> str:
    """The script's docstring line, its own options with defaults, then every setting with its current
    default and its comment from settings.py."""
    doc = (getattr(sys.modules.get("__main__"), "__doc__", None) or "").strip()  # the script's docstring
    lines = [doc.splitlines()[0] if doc else "", "",
             "options: --key=value (a bool option may be given bare); --debug shows tracebacks; --help"]
    lines += [f"  --{k.replace('_', '-')}={v!r}" for k, v in (flags or {}).items()]
    lines += ["", "settings (settings.py; any of them as --name=value):"]
    docs = settings.docs()
    for k, v in settings.current().items():  # as settings.py has them: a bad value is shown, not a traceback
        shown = "''" if k in settings.SECRET and v else repr(v)  # never print a key
        lines.append(f"  --{k}={shown}" + (f"    {docs[k]}" if docs.get(k) else ""))
    return "\n".join(lines)


def join_space_values(argv: list[str]) -> list[str]:
    # Accept "--model PATH" as well as "--model=PATH": glue a value to the option before it.
    out: list[str] = []
    for a in argv:
        if out and out[-1].startswith("--") and "=" not in out[-1] and not a.startswith("--"):
            out[-1] += "=" + a
        else:
            out.append(a)
    return out


def _flag(key: str, default: Any, value: str | None) -> Any:
    """A script option's value from its command-line text (None: given bare), typed like its default."""
    if isinstance(default, bool) and value is None:
        return True
    if value is None:
        raise SettingsError(f"option '--{key}' needs a value: --{key}=VALUE")
    if isinstance(default, bool):
        if value.lower() not in BOOLS:
            raise SettingsError(f"option '--{key}' must be true or false, got {value!r}")
        return BOOLS[value.lower()]
    if default is None or isinstance(default, str):
        return value
    try:
        return type(default)(value)
    except ValueError:
        raise SettingsError(f"option '--{key}' must be {type(default).__name__}, got {value!r}") from None


def _is_file_error(e: BaseException) -> bool:
    """An OSError of the user's environment (a missing or unreadable file, a full disk), not a bug."""
    return isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)) \
        or (isinstance(e, OSError) and (bool(e.filename) or e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS)))


def one_line(e: BaseException) -> str:
    """An error's message on one line: an OSError as 'file: reason', line breaks shown as \\n."""
    if isinstance(e, OSError) and e.filename:
        text = f"{e.filename}: {e.strerror or e}"
    else:
        text = str(e).strip() or type(e).__name__
    return text.replace("\r", "\\r").replace("\n", "\\n")

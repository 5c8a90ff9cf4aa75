"""The command line of every stage: `python -m pipeline.<stage> [key=value ...]` (Hydra composes
`conf/`, `-m` for sweeps) or `--params params.yaml [overrides]` (DVC's stages), each key checked
against the schema before anything runs, and a user's error printed as one line.
"""

from __future__ import annotations

import difflib
import shutil
import signal
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipeline.config import CONF_DIR, did_you_mean, group_options
from pipeline.config.compose import LEAF_KEYS, SETTABLE_KEYS, compose_raw, flatten, unknown_key_message, validate
from pipeline.config.schema import Config
from pipeline.errors import ConfigError, UserError
from pipeline.stopping import RunKilled, end_command_process


def in_multirun() -> bool:
    """True inside a job of a Hydra multirun (-m)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get().mode.name == "MULTIRUN"
    except (ImportError, ValueError):
        return False


def _explained(job: Callable[[], Any]) -> Any:
    """Run `job`; a UserError or an interruption becomes one line on stderr and an exit code."""
    try:
        return job()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(error.exit_code)
    except KeyboardInterrupt as stop:
        print(f"stopped: {stop if isinstance(stop, RunKilled) else 'Ctrl-C'}", file=sys.stderr)
        sys.exit(getattr(stop, "exit_code", 130))


def _stop_on_sigterm(signum, frame) -> None:
    """SIGTERM outside a training (which stops at its own safe points, `stopping`): stop now, in one line."""
    raise RunKilled("received SIGTERM")


def command(job: Callable[[], Any]) -> Any:
    """Run a command's `job` with SIGTERM stopping it in one line (exit 143), as Ctrl-C does
    (exit 130); the handler does not outlive the command. A process that was started to run the
    command ends right after it (`stopping.end_command_process`)."""
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        result = _explained(job)
    except SystemExit as exit:
        stopped: SystemExit | None = exit
    else:
        stopped = None
    finally:  # a bug's exception goes on from here with its traceback
        signal.signal(signal.SIGTERM, previous)
    end_command_process(stopped.code if stopped else 0)
    if stopped:
        raise stopped
    return result


def read_yaml_file(path: str | Path, what: str = "config file") -> DictConfig:
    """A YAML mapping from `path`, or a ConfigError naming the file, the line and the fix."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"cannot read the {what} {path}: {error.strerror or error}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(
            f"the {what} {path} is not valid YAML{where}: {problem}. Fix that line "
            "(keys are `name: value`, nested keys indented by two spaces)."
        ) from None
    if data is None:
        raise ConfigError(
            f"the {what} {path} is empty. Write the composed config into it (dvc exp run does, "
            "see README 'Configuration'), or run without --params: python -m pipeline.<stage> key=value"
        )
    if not isinstance(data, dict):
        raise ConfigError(f"the {what} {path} holds a {type(data).__name__}, not a mapping of config keys")
    return OmegaConf.create(data)


def apply_group_option(raw: DictConfig, group: str, option: str) -> DictConfig:
    """`group=option` applied to an already composed config, composed by Hydra itself.

    Every config section whose group option changes (`model` for model=residual_cnn; those an
    experiment overrides, e.g. experiment=cpu's model) becomes that section as Hydra composes
    it; then every other key the option changes (an experiment's own settings) is set.
    """
    if group == "hparams_search":
        raise ConfigError(f"{group}={option} is a Hydra sweep: run it as python -m pipeline.train -m {group}={option}")
    check_group_option(group, option)
    # what the option changes, measured from a composition without it (experiment=cpu is also the default)
    plain = compose_raw(["~experiment"] if group == "experiment" else [], with_hydra=True)
    chosen = compose_raw([f"{group}={option}"], with_hydra=True)
    was, now = plain.hydra.runtime.choices, chosen.hydra.runtime.choices
    replaced = [g for g in now if g in chosen and g != "hydra" and was.get(g) != now[g]]
    raw = OmegaConf.merge(
        OmegaConf.masked_copy(raw, [k for k in raw if k not in replaced]), {g: chosen[g] for g in replaced}
    )
    before = flatten(OmegaConf.to_container(OmegaConf.masked_copy(plain, [k for k in plain if k != "hydra"])))
    after = flatten(OmegaConf.to_container(OmegaConf.masked_copy(chosen, [k for k in chosen if k != "hydra"])))
    changed = [f"{k}={v}" for k, v in after.items() if before.get(k) != v and k.split(".")[0] not in replaced]
    return OmegaConf.merge(raw, OmegaConf.from_dotlist(changed)) if changed else raw


def load_params(argv: list[str]) -> Config:
    """`--params FILE [key=value | group=option ...]`: an already composed config (DVC's params.yaml).

    As on Hydra's command line, group choices (model=residual_cnn, experiment=cpu) apply first,
    in the order given (`apply_group_option`), and `key=value` overrides after them, so a key
    set on the command line wins over what a group sets.
    """
    if len(argv) < 2:
        raise ConfigError("--params needs a file, e.g. --params params.yaml")
    raw = read_yaml_file(argv[1], "params file")
    groups, keys = [], []
    for override in argv[2:]:
        key, sep, value = override.partition("=")
        if not sep:
            raise ConfigError(
                f"{override!r} is not an override: write key=value (e.g. train.epochs=3) "
                "or group=option (e.g. model=residual_cnn)"
            )
        check_key(key)
        (groups if "." not in key and (CONF_DIR / key).is_dir() else keys).append((key, value, override))
    for group, option, _ in groups:
        raw = apply_group_option(raw, group, option)
    for *_, override in keys:
        try:
            raw = OmegaConf.merge(raw, OmegaConf.from_dotlist([override]))
        except OmegaConfBaseException as error:
            raise ConfigError(f"cannot apply {override!r}: {str(error).splitlines()[0]}") from None
    return validate(raw)


def check_key(key: str) -> None:
    """Refuse a key that is neither a schema key nor a config group, suggesting the closest one."""
    key = key.lstrip("+~")
    if key.split(".")[0].split("/")[0] == "hydra" or "@" in key or "/" in key:
        return  # Hydra's own settings and package/group paths: Hydra checks those
    if "." not in key and (CONF_DIR / key).is_dir():
        return  # a group choice: augmentation=lesson
    parts = key.split(".")
    if key in SETTABLE_KEYS or any(".".join(parts[:depth]) in LEAF_KEYS for depth in range(1, len(parts))):
        return  # a key, or an item of a list-valued key (data.image_size.0)
    raise ConfigError(unknown_key_message(key))


# Hydra's own command-line flags: everything else that starts with "-" is a key written as a flag.
HYDRA_FLAGS = {
    "-m", "--multirun", "-h", "--help", "--hydra-help", "--version", "-c", "--cfg", "--resolve", "-p",
    "--package", "-r", "--run", "-i", "--info", "-sc", "--shell-completion", "-cp", "--config-path",
    "-cn", "--config-name", "-cd", "--config-dir", "--experimental-rerun",
}  # fmt: skip


def check_command_line(args: list[str]) -> None:
    """Check every `key=value` of a Hydra command line before Hydra composes it."""
    searched = [a.split("=", 1)[1].strip("[]") for a in args if a.startswith("hydra.searchpath=")]
    config_dirs = [Path(p.strip().removeprefix("file://")) for value in searched for p in value.split(",") if p.strip()]
    for position, arg in enumerate(args):
        if arg.startswith("-") and arg.split("=")[0] not in HYDRA_FLAGS:
            check_flag(arg, args[position + 1] if position + 1 < len(args) else None)
        elif "=" in arg:
            key, value = arg.split("=", 1)
            check_key(key)
            check_group_options(key.lstrip("+"), value, config_dirs)


def check_flag(flag: str, following: str | None) -> None:
    """`--epochs 3`: keys are not flags here. Say how to write it (`train.epochs=3`)."""
    name, _, value = flag.lstrip("-").partition("=")
    if not value and following and not following.startswith("-") and "=" not in following:
        value = following
    leaves: dict[str, list[str]] = {}  # a key's last part -> the keys that end with it
    for key in sorted(LEAF_KEYS):
        leaves.setdefault(key.rsplit(".", 1)[-1], []).append(key)
    name = name.replace("-", "_")
    close = [name] if name in leaves else difflib.get_close_matches(name, leaves, n=1, cutoff=0.6)
    matches = [key for leaf in close for key in leaves[leaf]]
    example = f"{matches[0]}={value or '...'}" if matches else "train.epochs=3"
    raise ConfigError(
        f"{flag} is not an option of this command: settings are written key=value, e.g. {example}"
        f"{' (or ' + ', '.join(matches[1:]) + ')' if len(matches) > 1 else ''}. --help lists the keys it reads."
    )


def check_group_options(group: str, value: str, config_dirs: list[Path] = ()) -> None:
    """`experiment=cpuu` names no file of conf/experiment/ (nor of `config_dirs`, the command line's
    hydra.searchpath): refuse it listing the choices (a sweep's comma-separated options each; Hydra's
    sweep functions such as glob(...) are left to Hydra)."""
    if "." in group or "/" in group or not (CONF_DIR / group).is_dir() or any(c in value for c in "()[]{}$"):
        return
    for option in (o.strip() for o in value.split(",")):
        if option != "null":
            check_group_option(group, option, config_dirs)


def check_group_option(group: str, option: str, config_dirs: list[Path] = ()) -> None:
    """A ConfigError when conf/<group>/ (or <dir>/<group>/ of `config_dirs`) has no `option`, listing the
    choices and the closest one."""
    options = group_options(group, config_dirs)
    if option not in options:
        hint = did_you_mean(option, options, f"{group}={{}}")
        raise ConfigError(
            f"{group}={option}: there is no conf/{group}/{option}.yaml; the options are: {', '.join(options)}{hint}"
        )


OUTPUT_PATHS = ("paths.split_dir", "paths.reports_dir", "paths.models_dir", "data.download_dir")


def check_output_paths(config: Config) -> Config:
    """Refuse, naming the key, an output folder that cannot be one: a path through a file
    (/etc/hostname/x), or a folder where a file must go (models/model.keras as a folder)."""
    for key in OUTPUT_PATHS:
        section, name = key.split(".")
        path = Path(getattr(getattr(config, section), name)).expanduser()
        blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            raise ConfigError(
                f"{key}={path}: {blocker} is a file, not a folder, so nothing can be written there. "
                f"Choose another {key}, or move that file away."
            )
    model_file = Path(config.paths.models_dir).expanduser() / "model.keras"
    if model_file.is_dir():
        raise ConfigError(
            f"paths.models_dir={config.paths.models_dir}: {model_file} is a folder, where training "
            "writes the model file. Remove or rename it, or choose another paths.models_dir."
        )
    return config


def command_help(task: Callable, reads: tuple[str, ...], overrides: list[str], sweeps: bool = True) -> str:
    """A command's --help, wrapped to the terminal: its module's docstring (what it does, with examples),
    the config groups and their options (`experiment=cpu`), then every key it reads (`reads`: sections or
    keys) with the value it has now - the defaults, the default experiment and the command line's
    overrides - and what it does."""
    from pipeline.config.comments import key_comments
    from pipeline.config.compose import compose, to_dict

    width = max(60, shutil.get_terminal_size((100, 24)).columns)
    module = sys.modules[task.__module__]
    started_as = getattr(sys.modules["__main__"].__spec__, "name", None)  # `python -m pipeline.compare`
    name = started_as or getattr(module.__spec__, "name", None) or task.__module__
    config = compose([o for o in overrides if "=" in o and not o.lstrip("+~").startswith("hydra")])
    words = {"None": "null", "True": "true", "False": "false"}  # as they are written on the command line
    values = {key: words.get(value, value) for key, value in flatten(to_dict(config)).items()}
    comments = key_comments()
    shown = [key for key in values if any(key == r or key.startswith(r + ".") for r in reads)]
    column = min(max((len(f"{k}={values[k]}") for k in shown), default=0), 40) + 4

    def entry(head: str, text: str) -> list[str]:
        """`  head  text`, the text wrapped beside the head (below it when the head is long)."""
        if not text:
            return textwrap.wrap(head, width, initial_indent="  ", subsequent_indent="      ")
        lines = textwrap.wrap(text, width - column, break_long_words=False) or [""]
        first = f"  {head}".ljust(column)
        if len(first) > column:  # a long value: the text on the lines below it
            return [*textwrap.wrap(head, width, initial_indent="  ", subsequent_indent="      ")] + [
                " " * column + line for line in lines
            ]
        return [first + lines[0], *(" " * column + line for line in lines[1:])]

    groups = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name not in ("schema", "hydra"))
    options = {group: ", ".join(sorted(f.stem for f in (CONF_DIR / group).glob("*.yaml"))) for group in groups}
    flags = ("-m (one job per combination of comma-separated values), " if sweeps else "") + (
        "--cfg job (print the composed config), --info, --hydra-help."
    )
    return "\n".join(
        [
            f"usage: python -m {name} {'[-m] ' if sweeps else ''}[group=option ...] [key=value ...]",
            "",
            (module.__doc__ or "").strip(),
            "",
            "Config groups (group=option picks a file of conf/<group>/; experiment=cpu is the default):",
            *(line for group in groups for line in entry(f"{group}=", options[group])),
            "",
            *textwrap.wrap(
                "The keys it reads, as they stand with this command line (set any as key=value; all keys and "
                "their defaults: docs/configuration.md):",
                width,
            ),
            *(line for key in shown for line in entry(f"{key}={values[key]}", comments.get(key, ""))),
            "",
            *textwrap.wrap("Hydra's own flags: " + flags, width),
        ]
    )


# What Hydra 1.4 may instantiate from our configs: the sweep callbacks and Optuna's samplers.
TRUSTED_TARGETS = ["pipeline.*", "optuna.samplers.*"]


def hydra_main_options(version: str) -> dict:
    """Hydra 1.3 is told to keep its own defaults (version_base); 1.4 deprecates that argument and
    instantiates only the targets a command trusts (its execution whitelist)."""
    return {"version_base": "1.3"} if version.startswith("1.3.") else {"execution_whitelist": TRUSTED_TARGETS}


def stage_entry(
    task: Callable[[Config], Any], reads: tuple[str, ...] = (), sweeps: bool = True, sweep_job: Callable | None = None
) -> Callable[[], Any]:
    """Turn `task(config)` into a command line entry point (`sweeps`: whether its help offers `-m`;
    `sweep_job(config)`: what a job of a multirun runs instead of `task`).

    `--params FILE [key=value ...]` loads an already composed config (DVC's params.yaml);
    otherwise Hydra composes `conf/` with the command line (single run or `-m`).
    Returns what `task` returns (Hydra's sweepers read it as the objective).
    """

    def main() -> Any:
        if {"-h", "--help"} & set(sys.argv[1:]):  # the command's own help, not Hydra's whole config
            overrides = [a for a in sys.argv[1:] if a not in ("-h", "--help")]
            return command(lambda: print(command_help(task, reads, overrides, sweeps)))
        return command(_entry)  # one line for a user's error, Ctrl-C or SIGTERM

    def _entry() -> Any:
        if sys.argv[1:2] == ["--params"]:
            return task(check_output_paths(load_params(sys.argv[1:])))

        check_command_line(sys.argv[1:])
        import hydra

        @hydra.main(config_path=str(CONF_DIR), config_name="config", **hydra_main_options(hydra.__version__))
        def hydra_task(raw: DictConfig) -> Any:
            job = lambda: (sweep_job if in_multirun() and sweep_job else task)(check_output_paths(validate(raw)))  # noqa: E731
            if in_multirun():  # a failing job is reported when the sweep ends (`sweeps`)
                from hydra.core.hydra_config import HydraConfig

                from pipeline.config.sweeps import run_job

                return run_job(job, HydraConfig.get().runtime.output_dir)
            return _explained(job)  # here: Hydra would print an error escaping its main as a traceback

        return hydra_task()

    return main

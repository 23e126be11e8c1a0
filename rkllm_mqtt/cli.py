"""The `rkllm-mqtt` command: run, check, generate, ask, demo, discovery.

Every expected failure ends as one clear line on stderr and a documented exit code; a traceback
means a bug. Subcommand bodies live in `rkllm_mqtt.commands` and are imported lazily, so `--help`
and `check` never pay for paho or the simulator.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from rkllm_mqtt import __version__
from rkllm_mqtt.config import DEFAULT_CONFIG_PATH, Settings, load_config
from rkllm_mqtt.errors import ConfigError, RkllmMqttError
from rkllm_mqtt.exitcodes import EXIT_FAILURE, EXIT_RUNTIME, EXIT_USAGE
from rkllm_mqtt.startup import config_line, config_path, preflight

log = logging.getLogger("rkllm_mqtt")


def _settings(args: argparse.Namespace) -> Settings:
    """Load `--config`; without it, the default path when it exists, else defaults + environment."""
    path = config_path(args.config)
    log.info("%s", config_line(path))
    return load_config(path)


def _cmd_run(args: argparse.Namespace) -> int:
    settings = _settings(args)
    preflight(settings.runtime)  # runtime and model before the broker
    from rkllm_mqtt.commands.run import run_service

    return run_service(settings)


def _cmd_check(args: argparse.Namespace) -> int:
    from rkllm_mqtt.board import run_check

    path = config_path(args.config)
    return run_check(load_config(path), config_path=path, root=args.root, user=args.user,
                     json=args.json)


def _cmd_generate(args: argparse.Namespace) -> int:
    settings = _settings(args)
    from rkllm_mqtt.commands.runtime import generate

    return generate(settings, args.text)


def _cmd_ask(args: argparse.Namespace) -> int:
    settings = _settings(args)
    from rkllm_mqtt.commands.ask import ask, load_tools
    from rkllm_mqtt.mqtt_client import MqttConnectError

    try:
        tools = load_tools(args.tools) if args.tools is not None else None
    except ValueError as err:
        print(f"rkllm-mqtt: --tools {args.tools}: {err}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return ask(settings, args.text, timeout=args.timeout, stream=not args.no_stream,
                   system=args.system, conversation=args.conversation, tools=tools,
                   pool=args.pool)
    except MqttConnectError as err:  # no broker: the question failed, the runtime is not at fault
        print(f"rkllm-mqtt: {err}", file=sys.stderr)
        return EXIT_FAILURE


def _cmd_demo(args: argparse.Namespace) -> int:
    from rkllm_mqtt.commands.demo import demo

    return demo(abi=args.abi, prompt=args.prompt, fast=args.fast, keep_running=args.keep_running)


def _cmd_discovery(args: argparse.Namespace) -> int:
    from rkllm_mqtt.commands.discovery import publish_discovery, remove_discovery

    settings = _settings(args)
    return remove_discovery(settings) if args.remove else publish_discovery(settings)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rkllm-mqtt",
        description="Serve a local LLM on a Rockchip NPU (RKLLM) over MQTT.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--log-level", default=None, choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="default: INFO for run/check/discovery, WARNING for the interactive "
                             "commands (their output is the answer)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, func, *, config: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        if config:
            p.add_argument("--config", "-c", type=Path, default=None,
                           help=f"TOML configuration (default: {DEFAULT_CONFIG_PATH} if it exists)")
        p.set_defaults(func=func)
        return p

    command("run", "run the daemon: serve prompts over MQTT", _cmd_run)
    p = command("check", "diagnose the board, runtime, model and broker: one OK/WARN/FAIL line each",
                _cmd_check)
    p.add_argument("--json", action="store_true", help="the findings as JSON on stdout")
    p.add_argument("--user", default=None,
                   help="the service user whose access is checked (default: rkllm if it exists, "
                        "else the current user)")
    p.add_argument("--root", type=Path, default=Path("/"),
                   help="read /proc, /sys and /dev below this directory (default: /)")
    p = command("generate", "one local generation without MQTT, streamed to stdout", _cmd_generate)
    p.add_argument("text", help="the prompt")
    p = command("ask", "send a prompt to a running daemon and stream its reply", _cmd_ask)
    p.add_argument("text", help="the prompt")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the final reply")
    p.add_argument("--no-stream", action="store_true", help="print only the final answer")
    p.add_argument("--system", default=None, help="system prompt for this request")
    p.add_argument("--conversation", default=None, help="conversation id to continue")
    p.add_argument("--tools", type=Path, default=None, metavar="FILE",
                   help="a JSON file with a list of OpenAI-form tools to offer; the reply's tool "
                        "calls are printed as JSON lines")
    p.add_argument("--pool", default=None, metavar="GROUP",
                   help="send to the pool GROUP (<base_topic>/pool/GROUP/prompt) instead of one daemon; "
                        "resent with the same id when no member holds it")
    p = command("demo", "broker + simulator + daemon on this machine, then one prompt", _cmd_demo,
                config=False)
    p.add_argument("--abi", default="1.2", choices=["1.1", "1.2.0", "1.2", "1.3"],
                   help="simulated runtime family (default: 1.2)")
    p.add_argument("--prompt", default="Hello from rkllm-mqtt! What can you do?")
    p.add_argument("--fast", action="store_true", help="no simulated RK3588 delays")
    p.add_argument("--keep-running", action="store_true",
                   help="keep broker and daemon running after the answer (Ctrl-C stops)")
    p = command("discovery", "publish or remove the Home Assistant discovery config", _cmd_discovery)
    p.add_argument("--remove", action="store_true", help="clear the retained discovery config")
    return parser


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    interactive = args.command in ("generate", "ask", "demo")
    if interactive:  # SIGTERM ends them like Ctrl-C: abort the run, free the handle, exit 130
        signal.signal(signal.SIGTERM, _interrupt)
    logging.basicConfig(
        level=args.log_level or ("WARNING" if interactive else "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"rkllm-mqtt: {err}", file=sys.stderr)
        return EXIT_USAGE
    except RkllmMqttError as err:
        print(f"rkllm-mqtt: {err}", file=sys.stderr)
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

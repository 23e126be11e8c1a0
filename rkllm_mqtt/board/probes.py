"""One function per finding of `check`: facts in, a Finding with its fix out."""

from __future__ import annotations

import logging
from pathlib import Path

from rkllm_mqtt.board.access import User, can_open, describe
from rkllm_mqtt.board.findings import Finding, fail, ok, warn
from rkllm_mqtt.board.initprobe import InitReport
from rkllm_mqtt.board.modelfile import ModelFile
from rkllm_mqtt.board.system import Board, version_tuple
from rkllm_mqtt.config import DEFAULT_CONFIG_PATH, MqttSettings
from rkllm_mqtt.runtime.library import LoadedLibrary

MIN_NPU_DRIVER = (0, 9, 8)
# Runtime buffers and the KV cache come on top of the weights; the daemon itself needs ~60 MB.
MEMORY_MARGIN = 512 * 2**20
FAST_GOVERNORS = ("performance", "userspace")  # userspace: pinned by Rockchip's fix_freq scripts
FIX_FREQ = ("run Rockchip's scripts/fix_freq_{soc}.sh from rknn-llm as root (pins CPU, NPU and DDR "
            "to their maximum; not persistent across reboots)")


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size} bytes"


def config_file(path: Path | None) -> Finding:
    if path is not None:
        return ok("config", f"read {path}")
    return warn("config", f"no config file: {DEFAULT_CONFIG_PATH} does not exist; using defaults and "
                "RKLLM_MQTT_* environment variables",
                f"sudo install -m 0640 config/rkllm-mqtt.example.toml {DEFAULT_CONFIG_PATH}, "
                "or pass --config FILE")


def soc(board: Board, model_platform: str | None) -> Finding:
    compatible = board.compatible()
    if compatible is None:
        return warn("soc", "cannot read /proc/device-tree/compatible (not a device-tree board, or a "
                    "container that hides it)", "run on the board, or give the container "
                    "--security-opt systempaths=unconfined")
    chip = board.soc()
    if chip is None:
        return warn("soc", f"not a Rockchip NPU SoC ({', '.join(compatible) or 'empty'})",
                    "run rkllm-mqtt on an RK3588, RK3576, RK3562 or RV1126B board")
    if model_platform and model_platform != chip:
        return fail("soc", f"{chip}, but the model was converted for {model_platform}",
                    f"convert the model with rkllm-toolkit for target_platform='{chip.lower()}'")
    against = ", the model's target platform" if model_platform else ""
    return ok("soc", f"{chip}{against} ({compatible[-1] if compatible else ''})")


def npu_driver(board: Board, init: InitReport | None) -> Finding:
    version, source = board.npu_driver_version(), "/sys/kernel/debug/rknpu/version"
    if version is None and init is not None and init.driver_version:
        version, source = init.driver_version, "the runtime's init log"
    if version is None:
        return warn("npu-driver", "version unknown: /sys/kernel/debug/rknpu/version is not readable "
                    "(debugfs, root only) and the runtime did not log it",
                    "sudo cat /sys/kernel/debug/rknpu/version; it must be 0.9.8 or later")
    parsed = version_tuple(version)
    if parsed is not None and parsed < MIN_NPU_DRIVER:
        return fail("npu-driver", f"{version} (from {source}) is older than 0.9.8: rkllm_init may "
                    "report success and then fail (rknn-llm #156)",
                    "upgrade the kernel to one with RKNPU driver 0.9.8 or later")
    return ok("npu-driver", f"{version} (from {source}), 0.9.8 or later")


def npu_access(board: Board, user: User) -> Finding:
    nodes = board.npu_nodes()
    if not nodes:
        message = "no NPU device node (/dev/rknpu, or a /dev/dri/renderD* of the rknpu driver)"
        if board.soc() is None:
            return warn("npu-access", message, "run on a board whose kernel has the rknpu driver")
        return fail("npu-access", message + ": the rknpu driver is not loaded",
                    "use a vendor (BSP) kernel or an Armbian image whose kernel has the RKNPU driver")
    denied = [node for node in nodes if not can_open(user, node, "rw", below=board.root)]
    if denied:
        shown = ", ".join(f"{node.name} ({describe(node)})" for node in denied)
        return fail("npu-access", f"{user.name} cannot open {shown}",
                    f"install systemd/99-rknpu.rules into /etc/udev/rules.d/, then "
                    f"sudo usermod -aG render {user.name} && sudo udevadm trigger")
    return ok("npu-access", f"{user.name} can open {', '.join(str(n) for n in nodes)}")


def library(path: str, user: User, loaded: LoadedLibrary | None, error: str | None) -> Finding:
    fix = ("set runtime.library to the librkllmrt.so of the rknn-llm release that converted the "
           "model (rkllm-runtime/Linux/librkllm_api/aarch64/)")
    file = Path(loaded.path if loaded else path)
    if "/" in str(file) and file.exists() and not can_open(user, file):
        return fail("library", f"{user.name} cannot read {file} ({describe(file)})",
                    f"sudo chmod 0644 {file}")
    if loaded is None:
        return fail("library", error or f"cannot load {path}", fix)
    version = loaded.runtime_version or "version string not found"
    return ok("library", f"{loaded.path}: ABI family {loaded.abi}, runtime {version}")


def callback(built: bool) -> Finding:
    """Whether the result callback is the C hand-off (runtime.handoff) or the Python fallback."""
    if built:
        return ok("callback", "token hand-off in C: the runtime never waits for Python's GIL")
    return warn("callback", "the C token hand-off is not built: the runtime's callback waits for "
                "Python's GIL (tens of µs a token when the daemon is busy)",
                "install a C compiler (sudo apt install gcc) and reinstall the package "
                "(sudo REINSTALL=yes ./scripts/install.sh)")


def cpu(board: Board, version: str | None) -> Finding:
    """`version`: the runtime library's own version string, when it has one."""
    features = board.cpu_features()
    if features is None:
        return warn("cpu", "not an aarch64 CPU (/proc/cpuinfo lists no 'Features'); librkllmrt.so "
                    "runs on the aarch64 cores of the board", "run on the board")
    if "sve" in features:
        return ok("cpu", "aarch64 with SVE")
    if version and version.startswith("1.3."):
        return fail("cpu", f"this CPU has no SVE, and the prebuilt librkllmrt.so {version} uses it: "
                    "it dies with 'Illegal instruction' (rknn-llm #518)",
                    "use the runtime of rknn-llm release-v1.2.3 (with a model converted by "
                    "toolkit 1.2.3), or a runtime build without SVE")
    return ok("cpu", "aarch64 without SVE" + (f" (runtime {version} does not need it)" if version else ""))


def model(path: str | None, user: User, info: ModelFile | None, init: InitReport | None) -> Finding:
    if not path:
        return fail("model", "runtime.model is not set (the path of the .rkllm model file)",
                    "set runtime.model in the config file")
    file = Path(path)
    if not file.is_file():
        return fail("model", f"model file not found: {path}", "check runtime.model")
    if info is None or not can_open(user, file):
        return fail("model", f"{user.name} cannot read {path} ({describe(file)})",
                    f"sudo chmod 0644 {path} (and make its directories searchable)")
    parts = [_mib(info.size)]
    platform = init.platform if init and init.platform else info.platform
    source = "runtime log" if init and init.platform else info.platform_from
    if platform:
        parts.append(f"target platform {platform} (from the {source})")
    toolkit = (init.toolkit_version if init else None) or info.toolkit_version
    if toolkit:
        parts.append(f"rkllm-toolkit {toolkit}")
    return ok("model", f"{path}: {', '.join(parts)}")


def context(configured: int | None, init: InitReport | None) -> Finding:
    limit = init.max_context_limit if init else None
    wanted = configured if configured is not None else (init.max_context_len if init else None)
    if wanted is None:
        return warn("context", "runtime.max_context_len unknown (the runtime did not load)")
    if limit is None:
        return warn("context", f"max_context_len {wanted}; the runtime did not report the model's "
                    "max_context_limit", "keep runtime.max_context_len at or below the max_context the model "
                    "was converted with")
    if wanted > limit:
        return fail("context", f"runtime.max_context_len = {wanted} is above the model's "
                    f"max_context_limit of {limit} tokens",
                    f"set runtime.max_context_len to {limit} or less")
    return ok("context", f"max_context_len {wanted} within the model's limit of {limit}")


def rkllm_init(init: InitReport) -> Finding:
    if init.ok:
        return ok("rkllm_init", "the model loaded")
    if init.error and "crashed" in init.error:
        return fail("rkllm_init", init.error, "see the cpu and memory findings; `rkllm-mqtt generate "
                    "hi` shows the runtime's own lines")
    return fail("rkllm_init", init.error or "failed")  # its errors already name what to change


def _governors(name: str, found: dict[str, str], board: Board, what: str) -> Finding:
    if not found:
        return warn(name, f"no {what} frequency governor found", None)
    slow = {where: governor for where, governor in found.items() if governor not in FAST_GOVERNORS}
    shown = ", ".join(f"{where}: {governor}" for where, governor in found.items())
    if slow:
        soc = (board.soc() or "rk3588").lower()
        return warn(name, f"{shown} (tokens/s drop when clocks scale down)",
                    f"write 'performance' to each governor, or {FIX_FREQ.format(soc=soc)}")
    return ok(name, shown)


def cpu_governor(board: Board) -> Finding:
    return _governors("cpu-governor", board.cpu_governors(), board, "CPU")


def npu_governor(board: Board) -> Finding:
    return _governors("npu-governor", board.npu_governors(), board, "NPU (devfreq)")


def memory(board: Board, model_size: int | None) -> Finding:
    available = board.mem_available()
    if available is None:
        return warn("memory", "MemAvailable not found in /proc/meminfo")
    if model_size is None:
        return ok("memory", f"{_mib(available)} available")
    if available < model_size:
        return fail("memory", f"{_mib(available)} available, less than the model's {_mib(model_size)}",
                    "stop other services, or use a smaller model (or a w4a16/w8a8_g128 quantization)")
    if available < model_size + MEMORY_MARGIN:
        return warn("memory", f"{_mib(available)} available for a {_mib(model_size)} model: "
                    "little room for the runtime's buffers and KV cache",
                    "stop other services or lower runtime.max_context_len")
    return ok("memory", f"{_mib(available)} available for the model ({_mib(model_size)})")


def broker(settings: MqttSettings) -> Finding:
    from rkllm_mqtt.errors import RkllmMqttError
    from rkllm_mqtt.mqtt_client import MqttClient

    how = f"{settings.host}:{settings.port} (MQTT {settings.protocol}" + (
        ", TLS" if settings.tls else "") + (f", user {settings.username}" if settings.username else "") + ")"
    client = MqttClient(settings, client_id=f"{settings.effective_client_id}-check")
    quiet = logging.getLogger("rkllm_mqtt.mqtt_client")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # the finding says it all; no log lines around it
    try:
        client.connect(attempts=1)
    except RkllmMqttError as err:
        return fail("broker", f"{how}: {err}",
                    "check mqtt.host, mqtt.port, the credentials and mqtt.tls*; is the broker "
                    "running (sudo apt install mosquitto)?")
    finally:
        client.close(timeout=2.0)
        quiet.setLevel(level)
    return ok("broker", f"connected to {how}")

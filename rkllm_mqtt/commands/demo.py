"""`rkllm-mqtt demo`: the whole product on a machine without a board, in one command.

It builds the simulator of `librkllmrt.so`, starts a private broker on a free port (Mosquitto when
installed, else the embedded pure-Python one), runs the real daemon on the simulator at RK3588-like
speed, asks it one question through the real MQTT contract (`ask`), and prints how to talk to it.
Nothing here is a shortcut: the answer travels the same path as on a board.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import sys
import threading
from pathlib import Path

from rkllm_mqtt.broker import start_broker
from rkllm_mqtt.commands.ask import ask
from rkllm_mqtt.config import load_config
from rkllm_mqtt.service import Service
from rkllm_mqtt.simulator import build_simulator, sim_model_file

NODE = "demo"


def demo(*, abi: str = "1.2", prompt: str, fast: bool = False, keep_running: bool = False) -> int:
    """Run the demo; returns the exit code of the question it asks."""
    out = sys.stdout
    library = build_simulator(abi)
    model = sim_model_file()
    if fast:
        os.environ.pop("RKLLM_SIM_SPEED", None)
    else:
        os.environ.setdefault("RKLLM_SIM_SPEED", "rk3588")  # read by the simulator at rkllm_init
    # The daemon's own INFO lines would interleave with the streamed answer.
    logging.getLogger("rkllm_mqtt").setLevel(max(logging.WARNING,
                                                 logging.getLogger().getEffectiveLevel()))
    with start_broker() as broker:
        settings = load_config(
            None,
            mqtt={"host": broker.host, "port": broker.port, "node_id": NODE,
                  # the embedded broker speaks MQTT 3.1.1 only
                  "protocol": "5" if broker.kind == "mosquitto" else "3.1.1"},
            runtime={"library": str(library), "abi": abi, "model": str(model),
                     "max_context_len": 4096, "max_new_tokens": 256},
            homeassistant={"discovery": False},  # a demo must not add a device to a real HA
            queue={"on_shutdown": "abort"},
        )
        speed = "as fast as it goes" if fast else "at RK3588 speed (Qwen2.5-1.5B w8a8 figures)"
        print(f"broker   {broker.kind} on {broker.host}:{broker.port}", file=out)
        print(f"daemon   node '{NODE}', simulated librkllmrt.so ({abi} ABI) {speed}", file=out)
        service = Service(settings)
        service.start(connect_attempts=5)
        try:
            print(f"\n> {prompt}\n", file=out, flush=True)
            code = ask(settings, prompt, timeout=60.0, stream_to=out)
            print(file=out)
            _print_howto(settings.mqtt.prefix, broker.host, broker.port, Path(library), out,
                         keep_running)
            if keep_running:
                print("Serving until Ctrl-C.", file=out, flush=True)
                _wait_for_interrupt()
            return code
        finally:
            service.stop()


def _print_howto(prefix: str, host: str, port: int, library: Path, out, keep_running: bool) -> None:
    conn = f"-h {host} -p {port}"
    request = '{"id": "q1", "prompt": "Tell me a joke", "stream": true}'
    print("Talk to it (mosquitto-clients):", file=out)
    print(f"  mosquitto_sub {conn} -t '{prefix}/#' -v", file=out)
    print(f"  mosquitto_pub {conn} -t {prefix}/prompt -m 'What is the weather like?'", file=out)
    print(f"  mosquitto_pub {conn} -t {prefix}/prompt -m {shlex.quote(request)}", file=out)
    print(f"  rkllm-mqtt ask 'Hello'    # with RKLLM_MQTT_MQTT__HOST={host} "
          f"RKLLM_MQTT_MQTT__PORT={port} RKLLM_MQTT_MQTT__NODE_ID={NODE}", file=out)
    print(f"Simulated runtime: {library}", file=out)
    if not keep_running:
        print("(`rkllm-mqtt demo --keep-running` keeps broker and daemon up.)", file=out)


def _wait_for_interrupt() -> None:
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(1.0):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

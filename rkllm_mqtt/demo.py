"""`rkllm-mqtt demo`: broker + simulated RK3588 + daemon + one streamed answer, on this machine.

Everything is the real product except the NPU: a private broker (Mosquitto, or amqtt when Mosquitto
is missing), the simulator library built from source with the C compiler, the daemon as `run` starts
it, and `ask` as the client, so what the demo shows is what a board does.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

from rkllm_mqtt.ask import ask
from rkllm_mqtt.broker import start_broker
from rkllm_mqtt.config import load_config
from rkllm_mqtt.service import Service
from rkllm_mqtt.simulator import build_simulator, sim_model_file

NODE_ID = "demo"


def demo(*, abi: str = "1.2", prompt: str = "Hello from rkllm-mqtt! What can you do?",
         fast: bool = False, keep_running: bool = False) -> int:
    """Run the whole chain once; with `keep_running`, serve until Ctrl-C. Returns ask's exit code."""
    if not fast:
        os.environ.setdefault("RKLLM_SIM_SPEED", "rk3588")  # read by the simulator at each run
    library = build_simulator(abi)
    with start_broker() as broker:
        protocol = "5" if "5" in broker.protocols else "3.1.1"
        settings = load_config(
            None,
            mqtt={"host": broker.host, "port": broker.port, "node_id": NODE_ID,
                  "protocol": protocol},
            runtime={"library": str(library), "abi": abi, "model": str(sim_model_file())},
            homeassistant={"discovery": False},
            queue={"on_shutdown": "abort"},
        )
        prefix = settings.mqtt.prefix
        service = Service(settings)
        service.start(connect_attempts=5)
        try:
            print(f"broker: {broker.kind} on {broker.host}:{broker.port} (MQTT {protocol}); "
                  f"daemon: simulated RKLLM {abi}{'' if fast else ' at RK3588 speed'}")
            print(f"> {prompt}")
            code = ask(settings, prompt, timeout=120)
            print("\nTalk to it yourself:")
            print(f"  mosquitto_sub -h {broker.host} -p {broker.port} -t '{prefix}/#' -v")
            print(f"  mosquitto_pub -h {broker.host} -p {broker.port} -t {prefix}/prompt "
                  "-m 'Tell me a joke'")
            print(f"  mosquitto_pub -h {broker.host} -p {broker.port} -t {prefix}/prompt "
                  "-m '{\"id\": \"j1\", \"prompt\": \"Hi\", \"stream\": false}'")
            if keep_running:
                print("Serving until Ctrl-C.", flush=True)
                _wait_for_interrupt()
            return code
        finally:
            service.stop()


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
        sys.stdout.flush()

"""The bodies of the `rkllm-mqtt` subcommands, one module per concern.

`cli` parses the arguments and imports the one it needs lazily, so `--help` and `check` never pay
for paho or the simulator:

- `run`: the daemon (`rkllm-mqtt run`);
- `discovery`: publish or remove the Home Assistant discovery (`rkllm-mqtt discovery`);
- `runtime`: the runtime alone, no MQTT (`rkllm-mqtt check`, `rkllm-mqtt generate`);
- `ask`: one request to a running daemon (`rkllm-mqtt ask`);
- `demo`: broker, simulator and daemon on this machine (`rkllm-mqtt demo`).
"""

"""rkllm-mqtt: a local LLM on a Rockchip NPU, served over MQTT."""

__version__ = "0.1.0"

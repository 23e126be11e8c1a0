"""`python -m rkllm_mqtt` is the `rkllm-mqtt` command."""

import sys

from rkllm_mqtt.cli import main

sys.exit(main())

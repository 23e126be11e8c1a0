"""Exit codes of the `rkllm-mqtt` command, in one place because scripts and systemd rely on them."""

EXIT_OK = 0
EXIT_FAILURE = 1  # the work itself failed: error reply, timeout, generation error
EXIT_USAGE = 2  # bad command line or configuration
EXIT_RUNTIME = 3  # the runtime library or model could not be loaded

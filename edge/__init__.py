"""What runs on a robot: the agent, device backends, ZeroMQ links, watchdog."""

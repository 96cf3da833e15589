"""pytest fixtures that run the simulator on a free loopback port."""

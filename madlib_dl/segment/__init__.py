"""The segment runtime: what runs inside a worker backend (or the driver's, in process) for one run."""

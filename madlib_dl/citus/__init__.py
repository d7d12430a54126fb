"""Citus: packed tables whose segments live on Citus worker nodes."""

"""AutoML over Model Hopper Parallelism: policies that decide which configurations train, how far,
and which stop (Hyperband, ASHA, TPE), kept apart from the driver that runs what they decide."""

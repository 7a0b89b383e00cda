"""The shm-metrics publisher: samples the host into a shared-memory segment."""

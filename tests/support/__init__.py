"""Support code of the test suite, apart from the tests: the one-node SLURM cluster and the container
engine (Docker, Apptainer) that tests/test_slurm.py and tests/test_container.py start and stop."""

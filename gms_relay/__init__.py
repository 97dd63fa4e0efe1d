"""The relay's entry points (`gms-relay`, the local-stack supervisor), above the processes they start."""

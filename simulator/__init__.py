"""A GMS + Chat Server simulator: Chat API v2 on loopback and a sequential customhttp push sender."""

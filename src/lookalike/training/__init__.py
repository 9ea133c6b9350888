"""Training on a catalogue's metadata: splits, triplets, the Deep Ranking network and its loop (the only torch user)."""

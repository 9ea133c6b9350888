"""How good the answers are: metrics over arrays, evaluation runs, reports and galleries."""

"""The champion / regression gate: the decision and its statistics, the gate over a run, champions and deployment."""

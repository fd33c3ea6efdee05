"""A study harness for classification losses: how fast does each loss converge from bad starts?

Data flow, one module per step: config -> grid -> data -> models + inits -> train -> tracking.
"""

"""The GCoT graph's nodes, one module each: `(state, services) -> partial state update`.

analyse, hypothesise, write_code, verify, evaluate, tournament, reflect, finalize.
`autoprune.agent.graph` wires them; tests call them alone with real or scripted services.
"""

"""What the controller, the agent and the worker must agree on, in one place.

The config rules (rules), the four fields of a config and their validation, the state a watch
answers with (config), the signature on a push (signing), the one-line log format every
process writes (logs), and the rules of an agent's labels (labels). The three processes import this
package; it imports none of them (no apps/, agent/ or worker/), and needs no Django settings.
"""

"""What every HTTP endpoint of the control plane shares, whichever package serves it (admin,
canary, geo, console): JSON errors, who is asking, how a policy change becomes a revision."""

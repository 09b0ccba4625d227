"""Use cases of the live control plane. Each owns its transaction; none makes a network call inside one."""

"""Code both the ingress and the workers use: settings, models, Redis layout, GMS client."""

"""Deployments: see prefect.yaml (schedules, parameters, work pools)."""

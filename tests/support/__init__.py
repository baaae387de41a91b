"""Helpers shared by the tests: test models, fabricated inputs, local servers, Airflow stacks."""

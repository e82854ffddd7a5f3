"""The main job: every stage that exists, run on one model, written up as a report."""

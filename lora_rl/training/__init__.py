"""Pieces every backend and algorithm share: process runtime, optimizer/scheduler, the step loop."""

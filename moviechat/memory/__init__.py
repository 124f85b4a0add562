"""Streaming memory of MovieChat: short-term buffer, consolidation, long-term memory, position table.

Rooms: ``config`` (settings and validation), ``consolidation`` (merge planning and applying),
``planner`` (the memory of whole videos as plans, used in training), ``streaming`` (the stateful memory
of inference), ``layout`` (position table and breakpoint truncation, shared by both), ``presets`` (what
``streaming``, ``original`` and ``moviechat_plus`` process), ``train_modes`` (what a training step sees:
the memory, uniform frames or a detached memory), ``reference`` (a
plain per-frame loop written from the definition, for tests and benchmarks). The semantics are in
docs/architecture.md, "Streaming memory".
"""

from moviechat.memory.config import LONG_MEMORY_POLICIES, PRESETS, TRAIN_MODES, MemoryConfig, Mode
from moviechat.memory.consolidation import consolidate, frame_means, plan_consolidation
from moviechat.memory.layout import breakpoint_truncation, position_table, position_tables
from moviechat.memory.planner import MemoryPlan, PlanCache, apply_plan, build_memory, memory_plans
from moviechat.memory.streaming import StreamingMemory, stream_reads
from moviechat.memory.train_modes import training_memories

__all__ = [
    "LONG_MEMORY_POLICIES", "PRESETS", "TRAIN_MODES", "MemoryConfig", "Mode", "consolidate", "frame_means", "plan_consolidation",
    "breakpoint_truncation", "position_table", "position_tables", "MemoryPlan", "PlanCache", "apply_plan",
    "build_memory", "memory_plans", "StreamingMemory", "stream_reads", "training_memories",
]

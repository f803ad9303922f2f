"""Invertible interpretation networks (issue 26): invertible blocks, the factor INN on h,
and the conditional INN of h's invariances. Equations: docs/method.md § "The INN (issue 26)"."""

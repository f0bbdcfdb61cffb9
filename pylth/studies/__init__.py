"""What is measured on finished runs beyond Algorithm 1: the mixed chain (dense early, ticket late;
``mixed_chain``), rounds scored again (``evaluations``) and runs compared side by side (``comparison``)."""

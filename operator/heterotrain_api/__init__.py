"""HeteroTrainJob API types (heterotrain.io/v1alpha1): the single source of truth for the CRD."""

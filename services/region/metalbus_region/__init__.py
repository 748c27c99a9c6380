"""The region: the brain that owns PostgreSQL and answers the region.* subjects in queue group "region"."""

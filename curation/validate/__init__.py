"""Window validation (LongCat §2.1 second stage): checks, profiles, the offline run and its funnel."""

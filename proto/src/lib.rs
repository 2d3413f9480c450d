//! Wire types shared by the haystack services.

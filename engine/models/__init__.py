"""The portable model: artifact format, fitting, profiling, scoring arithmetic."""

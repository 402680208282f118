"""Documents for people: the monthly investor statement as PDF, issued once and stored with its digest."""

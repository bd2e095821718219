"""Reading volumes as the user hands them over: folders and .iso images, locating a set among them, and
read-ahead of their files."""

// Placeholder: the browser client and demo scripts live in web/.

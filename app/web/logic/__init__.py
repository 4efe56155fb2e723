"""One back-end module per page: plain functions that the pages' callbacks call and unit tests
call directly, without a browser."""

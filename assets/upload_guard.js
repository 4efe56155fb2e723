/*
 * Upload boxes (components.upload_box): every failed upload gets a message in the page.
 *
 * 1. Before upload: a file of another format, an empty file or one over the limit is stopped
 *    in the capture phase, before dcc.Upload (react-dropzone) sees it. Its contents are never
 *    read, so no callback is sent; the box's message element says why. The rule is the
 *    dropzone's own (extension or MIME type in `accept`), so nothing it would drop silently
 *    gets past without a message.
 * 2. After upload: a 413 from Dash's callback route (a page served before the limit changed,
 *    or a browser that skipped step 1) is shown in the same place, with the server's message,
 *    and handed to the renderer as a 204 (no update), which it does not log as a failure.
 *    A connection the server closed on the refused body gets a message too.
 *
 * The server checks everything again (app/web/uploads.py). No inline script: the CSP holds.
 */
(function () {
    'use strict';

    var GUARD = '[data-upload-guard]';

    function fmtBytes(n) {
        var units = ['bytes', 'KB', 'MB', 'GB'];
        var value = n;
        for (var i = 0; i < units.length; i++) {
            if (value < 1024 || i === units.length - 1) {
                return i === 0 ? Math.floor(value) + ' bytes' : value.toFixed(1) + ' ' + units[i];
            }
            value /= 1024;
        }
        return value.toFixed(1) + ' GB';
    }

    function say(box, text) {
        var target = box.getAttribute('data-message-id');
        var api = window.dash_clientside;
        var message = {
            type: 'Div', namespace: 'dash_html_components',
            props: {children: text, className: 'lens-msg lens-msg-error', role: 'alert'}
        };
        if (target && api && api.set_props) {
            api.set_props(target, {children: message});
        } else {  // the renderer is not up: an alert still says it
            window.alert(text);
        }
    }

    function accepted(file, accept) {
        var name = (file.name || '').toLowerCase();
        var type = (file.type || '').toLowerCase();
        return accept.split(',').some(function (item) {
            item = item.trim().toLowerCase();
            if (!item) { return false; }
            if (item.charAt(0) === '.') { return name.slice(-item.length) === item; }
            if (item.slice(-2) === '/*') { return type.indexOf(item.slice(0, -1)) === 0; }
            return type === item;
        });
    }

    /* Why `file` cannot be uploaded through `box`, or null. */
    function problem(box, file) {
        var name = file.name || 'upload';
        var formats = box.getAttribute('data-formats') || 'an image';
        var limit = parseInt(box.getAttribute('data-max-bytes') || '0', 10);
        if (!accepted(file, box.getAttribute('data-accept') || '')) {
            var dot = name.lastIndexOf('.');
            var kind = dot > 0 ? 'a ' + name.slice(dot).toLowerCase() + ' file'
                : (file.type ? 'a ' + file.type + ' file' : 'a file of unknown type');
            return name + ' is ' + kind + '; expected a ' + formats + ' image.';
        }
        if (file.size === 0) {
            return name + ' is empty (0 bytes); expected a ' + formats + ' image.';
        }
        if (limit > 0 && file.size > limit) {
            return name + ' is ' + fmtBytes(file.size) + '; the upload limit is ' + fmtBytes(limit) +
                ' (UNET_LENS_MAX_UPLOAD_BYTES). Crop or compress the image and try again.';
        }
        return null;
    }

    /* The dropzone's drag state is reset as its own drop would (it never sees this one). */
    function resetDrag(box) {
        var zone = box.firstElementChild;
        if (!zone) { return; }
        [zone].concat(Array.prototype.slice.call(zone.querySelectorAll('*'))).forEach(function (el) {
            el.dispatchEvent(new Event('dragleave', {bubbles: true}));
        });
    }

    function check(event, files) {
        var box = event.target && event.target.closest ? event.target.closest(GUARD) : null;
        if (!box || !files || !files.length) { return; }
        var why = problem(box, files[0]);
        if (!why) { return; }
        event.stopPropagation();
        event.preventDefault();
        if (event.type === 'change') {
            event.target.value = '';  // the same file chosen again fires `change` again
        } else {
            resetDrag(box);
        }
        say(box, why);
    }

    document.addEventListener('change', function (event) {
        if (event.target && event.target.type === 'file') { check(event, event.target.files); }
    }, true);
    document.addEventListener('drop', function (event) {
        check(event, event.dataTransfer && event.dataTransfer.files);
    }, true);

    /* 2. A 413 on the callback route: find the upload box whose contents were sent. */
    var realFetch = window.fetch;
    if (!realFetch) { return; }

    /* The upload box whose contents this callback request carries, or null. */
    function sender(body) {
        if (typeof body !== 'string') { return null; }
        var boxes = document.querySelectorAll(GUARD);
        for (var i = 0; i < boxes.length; i++) {
            var id = boxes[i].getAttribute('data-upload-id');
            if (id && body.indexOf('"' + id + '.contents"') >= 0) { return boxes[i]; }
        }
        return null;
    }

    function limitText(box) {
        return fmtBytes(parseInt(box.getAttribute('data-max-bytes') || '0', 10));
    }

    window.fetch = function (input, init) {
        var result = realFetch.apply(this, arguments);
        var url = typeof input === 'string' ? input : (input && input.url) || '';
        if (url.indexOf('_dash-update-component') < 0) { return result; }
        var box = sender(init && init.body);
        if (!box) { return result; }
        return result.then(function (response) {
            if (response.status === 413) {
                response.clone().json().then(function (data) {
                    return data && data.error;
                }, function () { return null; }).then(function (text) {
                    say(box, text || ('The file is too large: the upload limit is ' +
                        limitText(box) + '.'));
                });
                // said in the page: to the renderer it is "no update", not a failed callback
                return new Response(null, {status: 204, statusText: 'No Content'});
            }
            return response;
        }, function (error) {  // the server closed the connection on a body it refused
            say(box, 'The upload did not reach the server (the connection was closed). ' +
                'Files over ' + limitText(box) + ' are refused; check your connection and try again.');
            throw error;
        });
    };
})();
